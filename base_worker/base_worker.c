/* base_worker — holds the frozen base model and answers step requests over
 * ZeroMQ with next-token log-probs: dense rows, or sparse rows (top-k plus
 * bounds) whose full rows it keeps for RowFetch. StepRequests from several
 * coordinators that arrive together share one forward pass.
 *
 *   base_worker --model DIR --bind ENDPOINT[,ENDPOINT...] [--device cpu|cpu-ref|cuda:N]
 *               [--threads N] [--max-seqs N] [--idle-timeout-s S] [--max-ctx N]
 *               [--kv-blocks N] [--worker-id ID] [--ready-file PATH]
 *               [--gather-us N] [--max-batch N] [--metrics-listen HOST:PORT]
 *
 * --bind takes one endpoint or a comma-separated list ("tcp://127.0.0.1:*,
 * ipc:///run/genarm/base.sock"); port "*" binds an ephemeral port, and
 * --ready-file then receives the first endpoint actually bound, written once
 * the worker serves. SIGTERM/SIGINT drain and exit 0. Exit status 1 on a
 * start-up failure, 2 on a bad command line. Log lines go to stderr as
 * key=value pairs. */
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
#include "worker_metrics.h"

#define COMP "base_worker"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

typedef struct opts {
    const char *model, *bind, *device, *worker_id, *ready_file, *metrics_listen;
    int threads, max_seqs, max_ctx, kv_blocks, gather_us, max_batch;
    double idle_timeout_s;
} opts;

/* What the step-server callbacks work on. */
typedef struct bw {
    gn_host *h;
    gn_step_server *srv;
    gn_worker_metrics *wm;
    /* Batch scratch (max_batch requests): the requests for the base model. */
    const gn_wire_step_req **reqs;
    gn_wire_step_resp **resps;
    int *idx, *codes;
    gn_err *errs;
} bw;

static void usage(FILE *f) {
    fprintf(f, "usage: base_worker --model DIR --bind ENDPOINT[,ENDPOINT...] [--device cpu|cpu-ref|cuda:N]\n"
               "                   [--threads N] [--max-seqs N] [--idle-timeout-s S] [--max-ctx N]\n"
               "                   [--kv-blocks N] [--worker-id ID] [--ready-file PATH]\n"
               "                   [--gather-us N] [--max-batch N] [--metrics-listen HOST:PORT]\n");
}

static int parse_opts(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    o->device = "cpu";
    o->worker_id = "base_worker";
    o->max_seqs = 64;
    o->idle_timeout_s = 300;
    o->gather_us = gn_step_server_default_params().gather_us;
    o->max_batch = 256;
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
        else if (!strcmp(a, "--metrics-listen")) o->metrics_listen = v;
        else if (!strcmp(a, "--threads")) { if (gn_cli_int("base_worker", a, v, 0, 1024, &o->threads)) return -1; }
        else if (!strcmp(a, "--max-seqs")) { if (gn_cli_int("base_worker", a, v, 1, 65536, &o->max_seqs)) return -1; }
        else if (!strcmp(a, "--max-ctx")) { if (gn_cli_int("base_worker", a, v, 0, 1 << 24, &o->max_ctx)) return -1; }
        else if (!strcmp(a, "--kv-blocks")) { if (gn_cli_int("base_worker", a, v, 0, 1 << 30, &o->kv_blocks)) return -1; }
        else if (!strcmp(a, "--gather-us")) { if (gn_cli_int("base_worker", a, v, 0, 10000000, &o->gather_us)) return -1; }
        else if (!strcmp(a, "--max-batch")) { if (gn_cli_int("base_worker", a, v, 1, 65536, &o->max_batch)) return -1; }
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

/* What Heartbeat replies report: published after every batch, command and sweep. */
static void publish_load(bw *w) {
    gn_step_load ld;
    memset(&ld, 0, sizeof ld);
    int used, total;
    gn_host_kv_usage(w->h, &used, &total);
    ld.active_seqs = (uint32_t)gn_host_n_seqs(w->h);
    ld.max_seqs = (uint32_t)gn_host_max_seqs(w->h);
    ld.kv_used_blocks = (uint32_t)used;
    ld.kv_total_blocks = (uint32_t)total;
    gn_host_counters(w->h, &ld.forward_passes, &ld.pass_seqs_total);
    ld.n_models = 1; /* the base model: empty name, version 0 */
    gn_step_server_publish_load(w->srv, &ld);
}

static int named(const Genarm__V1__ModelRef *m) { return m && m->name && m->name[0]; }

static void on_step(void *ud, const gn_wire_step_req *const *reqs, int n, gn_wire_step_resp *const *resps,
                    int *codes, gn_err *errs) {
    bw *w = ud;
    gn_step_server_stats st;
    gn_step_server_stats_get(w->srv, &st); /* the gather wait before this batch */
    int m = 0;
    for (int i = 0; i < n; i++) {
        codes[i] = 0;
        if (named(reqs[i]->model)) {
            gn_errf(&errs[i], GN_ENOTFOUND, "model \"%s\" v%u: this base worker serves only its base model",
                    reqs[i]->model->name, reqs[i]->model->version);
            codes[i] = GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL;
            continue;
        }
        w->reqs[m] = reqs[i];
        w->resps[m] = resps[i];
        w->idx[m++] = i;
    }
    uint64_t p0, s0, p1, s1;
    gn_host_counters(w->h, &p0, &s0);
    if (m) gn_host_step_batch(w->h, NULL, w->reqs, m, w->resps, w->codes, w->errs, gn_wire_now_ms());
    gn_host_counters(w->h, &p1, &s1);
    for (int j = 0; j < m; j++) {
        codes[w->idx[j]] = w->codes[j];
        if (w->codes[j]) errs[w->idx[j]] = w->errs[j];
    }
    int pass_seqs = (int)(s1 - s0);
    gn_worker_metrics_batch(w->wm, n, resps, codes, &pass_seqs, p1 > p0 ? 1 : 0, (double)st.last_gather_us / 1e6);
    publish_load(w);
}

static int on_fetch(void *ud, const Genarm__V1__RowFetch *req, Genarm__V1__RowFetchResult *res, gn_err *err) {
    bw *w = ud;
    int code;
    if (named(req->model)) {
        gn_errf(err, GN_ENOTFOUND, "model \"%s\" v%u: this base worker serves only its base model",
                req->model->name, req->model->version);
        code = GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL;
    } else {
        code = gn_host_fetch(w->h, NULL, req, res, err);
    }
    gn_worker_metrics_fetch(w->wm, code ? NULL : res);
    return code;
}

static int on_release(void *ud, const Genarm__V1__Release *rel, uint32_t *released, gn_err *err) {
    bw *w = ud;
    (void)err;
    *released = (uint32_t)gn_host_release(w->h, rel->seq_ids, rel->n_seq_ids);
    publish_load(w);
    return 0;
}

static void on_tick(void *ud, int64_t now_ms) {
    bw *w = ud;
    int freed = gn_host_sweep(w->h, now_ms);
    if (freed) {
        gn_wire_log("info", COMP, "event=idle_expired freed=%d live=%d", freed, gn_host_n_seqs(w->h));
        publish_load(w);
    }
}

int main(int argc, char **argv) {
    opts o;
    if (parse_opts(argc, argv, &o) != 0) {
        usage(stderr);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: waits return at once */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    gn_err err = {0};
    int status = 1;
    gn_backend *be = NULL;
    gn_model *m = NULL;
    bw w;
    memset(&w, 0, sizeof w);

    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = o.threads;
    if (!(be = gn_backend_create(o.device, &bp, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=backend device=%s msg=\"%s\"", o.device,
                    err.msg);
        goto out;
    }
    gn_model_params mp = gn_model_default_params();
    mp.load_tokenizer = 1; /* rows are cut to the tokenizer's size (n_out), as the ARMs' are */
    if (!(m = gn_model_load(o.model, be, &mp, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=model model=%s msg=\"%s\"", o.model,
                    err.msg);
        goto out;
    }
    gn_host_params hp = gn_host_default_params();
    hp.max_seqs = o.max_seqs;
    hp.max_batch_seqs = o.max_batch;
    hp.idle_timeout_ms = (int64_t)(o.idle_timeout_s * 1000.0);
    hp.runner.max_ctx = o.max_ctx;
    hp.runner.n_blocks = o.kv_blocks;
    if (!(w.h = gn_host_create(m, &hp, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=runner msg=\"%s\"", err.msg);
        goto out;
    }
    size_t nb = (size_t)o.max_batch;
    w.reqs = gn_calloc(nb, sizeof *w.reqs);
    w.resps = gn_calloc(nb, sizeof *w.resps);
    w.idx = gn_calloc(nb, sizeof *w.idx);
    w.codes = gn_calloc(nb, sizeof *w.codes);
    w.errs = gn_calloc(nb, sizeof *w.errs);
    if (!w.reqs || !w.resps || !w.idx || !w.codes || !w.errs || !(w.wm = gn_worker_metrics_create(o.worker_id, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=alloc msg=\"out of memory\"");
        goto out;
    }
    if (o.metrics_listen && gn_worker_metrics_serve(w.wm, o.metrics_listen, &err) != 0) {
        gn_wire_log("error", COMP, "event=start_failed stage=metrics listen=%s msg=\"%s\"", o.metrics_listen,
                    err.msg);
        goto out;
    }
    gn_step_server_params sp = gn_step_server_default_params();
    sp.endpoint = o.bind;
    sp.worker_id = o.worker_id;
    sp.log_comp = COMP;
    sp.gather_us = o.gather_us;
    sp.max_batch_seqs = o.max_batch;
    sp.limits.max_seqs = gn_host_max_req_seqs(w.h); /* more new sequences than slots: per-sequence
                                                       ERROR_CAPACITY, not a refused request */
    /* Ticks drive the idle sweep: fine enough for short test timeouts. */
    if (hp.idle_timeout_ms > 0 && hp.idle_timeout_ms < 1000)
        sp.tick_ms = (int)(hp.idle_timeout_ms / 4 + 1);
    gn_step_handlers hd = {.ud = &w, .step = on_step, .fetch = on_fetch, .release = on_release, .tick = on_tick};
    if (!(w.srv = gn_step_server_create(&sp, &hd, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=bind endpoint=%s msg=\"%s\"", o.bind,
                    err.msg);
        goto out;
    }
    publish_load(&w);
    int used, total;
    gn_host_kv_usage(w.h, &used, &total);
    gn_wire_log("info", COMP,
                "event=ready endpoint=%s endpoints=%s metrics=%s model=%s device=%s n_out=%d max_seqs=%d "
                "kv_blocks=%d idle_timeout_ms=%lld gather_us=%d max_batch=%d",
                gn_step_server_endpoint(w.srv), gn_step_server_endpoints(w.srv),
                gn_worker_metrics_address(w.wm)[0] ? gn_worker_metrics_address(w.wm) : "-", o.model, o.device,
                gn_host_n_out(w.h), o.max_seqs, total, (long long)hp.idle_timeout_ms, o.gather_us, o.max_batch);
    if (o.ready_file) {
        /* Write then rename, so a reader never sees a partial endpoint. */
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", o.ready_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%s\n", gn_step_server_endpoint(w.srv)) < 0 || fclose(f) != 0 ||
            rename(tmp, o.ready_file) != 0) {
            gn_wire_log("error", COMP, "event=start_failed stage=ready_file path=%s msg=\"%s\"",
                        o.ready_file, strerror(errno));
            goto out;
        }
    }
    if (gn_step_server_run(w.srv, &g_stop, &err) != 0) {
        gn_wire_log("error", COMP, "event=serve_failed msg=\"%s\"", err.msg);
        goto out;
    }
    status = 0;
out:
    gn_step_server_free(w.srv);
    gn_worker_metrics_free(w.wm);
    gn_free(w.reqs);
    gn_free(w.resps);
    gn_free(w.idx);
    gn_free(w.codes);
    gn_free(w.errs);
    gn_host_free(w.h);
    gn_model_free(m);
    gn_backend_free(be);
    if (status == 0)
        gn_wire_log("info", COMP, "event=exit status=0");
    return status;
}
