/* base_worker — holds the frozen base model and answers batched step
 * requests over ZeroMQ with next-token log-probs (DESIGN.md §2).
 *
 *   base_worker --model DIR --bind tcp://127.0.0.1:PORT [--device cpu|cpu-ref|cuda:N]
 *               [--threads N] [--max-seqs N] [--idle-timeout-s S] [--max-ctx N]
 *               [--kv-blocks N] [--worker-id ID] [--ready-file PATH]
 *
 * --bind may use port "*" (an ephemeral port); --ready-file then receives the
 * endpoint actually bound, written once the worker serves. SIGTERM/SIGINT
 * drain and exit 0. Exit status 1 on a start-up failure, 2 on a bad command
 * line. Log lines go to stderr as key=value pairs. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "gn_alloc.h"
#include "gn_cli.h"
#include "model.h"
#include "model_host.h"
#include "step_server.h"
#include "wire.h"

#define COMP "base_worker"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

typedef struct opts {
    const char *model, *bind, *device, *worker_id, *ready_file;
    int threads, max_seqs, max_ctx, kv_blocks;
    double idle_timeout_s;
} opts;

static void usage(FILE *f) {
    fprintf(f, "usage: base_worker --model DIR --bind ENDPOINT [--device cpu|cpu-ref|cuda:N] "
               "[--threads N]\n"
               "                   [--max-seqs N] [--idle-timeout-s S] [--max-ctx N] "
               "[--kv-blocks N]\n"
               "                   [--worker-id ID] [--ready-file PATH]\n");
}

static int parse_opts(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    o->device = "cpu";
    o->worker_id = "base_worker";
    o->max_seqs = 64;
    o->idle_timeout_s = 300;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "base_worker: %s: missing value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "--bind")) o->bind = v;
        else if (!strcmp(a, "--device")) o->device = v;
        else if (!strcmp(a, "--worker-id")) o->worker_id = v;
        else if (!strcmp(a, "--ready-file")) o->ready_file = v;
        else if (!strcmp(a, "--threads")) { if (gn_cli_int("base_worker", a, v, 0, 1024, &o->threads)) return -1; }
        else if (!strcmp(a, "--max-seqs")) { if (gn_cli_int("base_worker", a, v, 1, 65536, &o->max_seqs)) return -1; }
        else if (!strcmp(a, "--max-ctx")) { if (gn_cli_int("base_worker", a, v, 0, 1 << 24, &o->max_ctx)) return -1; }
        else if (!strcmp(a, "--kv-blocks")) { if (gn_cli_int("base_worker", a, v, 0, 1 << 30, &o->kv_blocks)) return -1; }
        else if (!strcmp(a, "--idle-timeout-s")) {
            char *end;
            o->idle_timeout_s = strtod(v, &end);
            if (*end || end == v || !(o->idle_timeout_s >= 0) || o->idle_timeout_s > 1e9) {
                fprintf(stderr, "base_worker: --idle-timeout-s %s: expected seconds >= 0\n", v);
                return -1;
            }
        } else {
            fprintf(stderr, "base_worker: unknown option %s\n", a);
            return -1;
        }
    }
    if (!o->model || !o->bind) {
        fprintf(stderr, "base_worker: --model and --bind are required\n");
        return -1;
    }
    return 0;
}

/* ---- step-server callbacks -------------------------------------------------- */

static gn_step_server *g_srv;

/* What Heartbeat replies report: published after every change. */
static void publish_load(gn_host *h) {
    if (!g_srv) return;
    gn_step_load ld;
    memset(&ld, 0, sizeof ld);
    int used, total;
    gn_host_kv_usage(h, &used, &total);
    ld.active_seqs = (uint32_t)gn_host_n_seqs(h);
    ld.max_seqs = (uint32_t)gn_host_max_seqs(h);
    ld.kv_used_blocks = (uint32_t)used;
    ld.kv_total_blocks = (uint32_t)total;
    ld.n_models = 1; /* the base model: empty name, version 0 */
    gn_step_server_publish_load(g_srv, &ld);
}

static int step_one(void *ud, const gn_wire_step_req *req, gn_wire_step_resp *resp, gn_err *err) {
    gn_host *h = ud;
    if (req->model && req->model->name && req->model->name[0]) {
        gn_errf(err, GN_ENOTFOUND, "model \"%s\" v%u: this base worker serves only its base model",
                req->model->name, req->model->version);
        return GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL;
    }
    return gn_host_step(h, req, gn_wire_now_ms(), resp, err);
}

/* Interim: one request per batch (max_batch_seqs 1). */
static void on_step(void *ud, const gn_wire_step_req *const *reqs, int n, gn_wire_step_resp *const *resps,
                    int *codes, gn_err *errs) {
    for (int i = 0; i < n; i++) codes[i] = step_one(ud, reqs[i], resps[i], &errs[i]);
    publish_load(ud);
}

static int on_release(void *ud, const Genarm__V1__Release *rel, uint32_t *released, gn_err *err) {
    (void)err;
    *released = (uint32_t)gn_host_release(ud, rel->seq_ids, rel->n_seq_ids);
    publish_load(ud);
    return 0;
}

static void on_tick(void *ud, int64_t now_ms) {
    int freed = gn_host_sweep(ud, now_ms);
    if (freed) publish_load(ud);
    if (freed)
        gn_wire_log("info", COMP, "event=idle_expired freed=%d live=%d", freed,
                    gn_host_n_seqs(ud));
}

int main(int argc, char **argv) {
    opts o;
    if (parse_opts(argc, argv, &o) != 0) {
        usage(stderr);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: zmq_poll returns EINTR at once */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    gn_err err = {0};
    int status = 1;
    gn_backend *be = NULL;
    gn_model *m = NULL;
    gn_host *h = NULL;
    gn_step_server *srv = NULL;

    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = o.threads;
    if (!(be = gn_backend_create(o.device, &bp, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=backend device=%s msg=\"%s\"", o.device,
                    err.msg);
        goto out;
    }
    gn_model_params mp = gn_model_default_params();
    mp.load_tokenizer = 1; /* rows are cut to the tokenizer's size (DESIGN.md §1) */
    if (!(m = gn_model_load(o.model, be, &mp, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=model model=%s msg=\"%s\"", o.model,
                    err.msg);
        goto out;
    }
    gn_host_params hp = gn_host_default_params();
    hp.max_seqs = o.max_seqs;
    hp.idle_timeout_ms = (int64_t)(o.idle_timeout_s * 1000.0);
    hp.runner.max_ctx = o.max_ctx;
    hp.runner.n_blocks = o.kv_blocks;
    if (!(h = gn_host_create(m, &hp, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=runner msg=\"%s\"", err.msg);
        goto out;
    }
    gn_step_server_params sp = gn_step_server_default_params();
    sp.endpoint = o.bind;
    sp.worker_id = o.worker_id;
    sp.log_comp = COMP;
    sp.limits.max_seqs = gn_host_max_req_seqs(h); /* more new sequences than slots: per-sequence
                                                      ERROR_CAPACITY, not a refused request */
    /* Ticks drive the idle sweep: fine enough for short test timeouts. */
    if (hp.idle_timeout_ms > 0 && hp.idle_timeout_ms < 1000)
        sp.tick_ms = (int)(hp.idle_timeout_ms / 4 + 1);
    sp.max_batch_seqs = 1;
    sp.gather_us = 0;
    gn_step_handlers hd = {.ud = h, .step = on_step, .release = on_release, .tick = on_tick};
    if (!(srv = gn_step_server_create(&sp, &hd, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=bind endpoint=%s msg=\"%s\"", o.bind,
                    err.msg);
        goto out;
    }
    g_srv = srv;
    publish_load(h);
    int used, total;
    gn_host_kv_usage(h, &used, &total);
    gn_wire_log("info", COMP,
                "event=ready endpoint=%s model=%s device=%s n_out=%d max_seqs=%d kv_blocks=%d "
                "idle_timeout_ms=%lld",
                gn_step_server_endpoint(srv), o.model, o.device, gn_host_n_out(h), o.max_seqs,
                total, (long long)hp.idle_timeout_ms);
    if (o.ready_file) {
        /* Write then rename, so a reader never sees a partial endpoint. */
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", o.ready_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%s\n", gn_step_server_endpoint(srv)) < 0 || fclose(f) != 0 ||
            rename(tmp, o.ready_file) != 0) {
            gn_wire_log("error", COMP, "event=start_failed stage=ready_file path=%s msg=\"%s\"",
                        o.ready_file, strerror(errno));
            goto out;
        }
    }
    if (gn_step_server_run(srv, &g_stop, &err) != 0) {
        gn_wire_log("error", COMP, "event=serve_failed msg=\"%s\"", err.msg);
        goto out;
    }
    status = 0;
out:
    gn_step_server_free(srv);
    gn_host_free(h);
    gn_model_free(m);
    gn_backend_free(be);
    if (status == 0)
        gn_wire_log("info", COMP, "event=exit status=0");
    return status;
}
