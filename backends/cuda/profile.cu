/* profile.cu — where the GPU time of eager steps goes, per op (an extra for
 * benchmarks, gn_backend_cuda_profile in backend_cuda.h).
 *
 * While profiling is on, each op records a CUDA event on the stream as it is
 * enqueued, labelled with the op and its shape; the GPU time from one mark to
 * the next is the labelled op's. When the host waits for the stream
 * (download, synchronize) an end mark closes the last interval and the
 * intervals are added to per-label totals. Events between kernels cost a
 * little overlap (programmatic dependent launch cannot cross them), and a
 * recorded graph is one opaque launch: profile eager steps. */
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda_common.cuh"

extern "C" {
#include "gn_alloc.h"
}

namespace {

constexpr int kMarks = 4096;  /* marks between two waits; later ones are dropped (counted) */
constexpr int kLabels = 128;  /* distinct labels */
constexpr int kLabelLen = 56;

struct total {
    char label[kLabelLen];
    double ms;
    long long count;
};

} // namespace

struct gn_cu_prof {
    cudaEvent_t ev[kMarks + 1];
    char label[kMarks][kLabelLen];
    int n_ev;      /* events created so far (lazily) */
    int n_marks;   /* marks since the last collect */
    long long dropped;
    total totals[kLabels];
    int n_totals;
};

static total *find_total(gn_cu_prof *p, const char *label) {
    for (int i = 0; i < p->n_totals; i++)
        if (!strcmp(p->totals[i].label, label)) return &p->totals[i];
    if (p->n_totals == kLabels) return &p->totals[kLabels - 1]; /* the last slot takes the overflow */
    total *t = &p->totals[p->n_totals++];
    snprintf(t->label, sizeof t->label, "%s", label);
    return t;
}

/* Records event i on the stream (creating it on first use); 0 on success. */
static int record(gn_cuda *c, int i) {
    gn_cu_prof *p = c->prof;
    while (p->n_ev <= i) {
        if (cudaEventCreate(&p->ev[p->n_ev]) != cudaSuccess) return -1;
        p->n_ev++;
    }
    return cudaEventRecord(p->ev[i], c->stream) == cudaSuccess ? 0 : -1;
}

extern "C" void gn_cu_prof_mark(gn_backend *be, const char *fmt, ...) {
    gn_cuda *c = gn_cu(be);
    gn_cu_prof *p = c->prof;
    if (!p || c->capturing) return;
    if (p->n_marks == kMarks || record(c, p->n_marks)) {
        p->dropped++;
        cudaGetLastError();
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->label[p->n_marks], kLabelLen, fmt, ap);
    va_end(ap);
    p->n_marks++;
}

extern "C" void gn_cu_prof_end(gn_backend *be) {
    gn_cuda *c = gn_cu(be);
    gn_cu_prof *p = c->prof;
    if (!p || c->capturing || !p->n_marks) return;
    if (record(c, p->n_marks) || cudaEventSynchronize(p->ev[p->n_marks]) != cudaSuccess) {
        p->dropped += p->n_marks;
    } else {
        for (int i = 0; i < p->n_marks; i++) {
            float ms = 0;
            if (cudaEventElapsedTime(&ms, p->ev[i], p->ev[i + 1]) != cudaSuccess) {
                p->dropped++;
                continue;
            }
            total *t = find_total(p, p->label[i]);
            t->ms += ms;
            t->count++;
        }
    }
    cudaGetLastError(); /* nothing here is sticky or the op's business */
    p->n_marks = 0;
}

static void prof_free(gn_cu_prof *p) {
    if (!p) return;
    for (int i = 0; i < p->n_ev; i++) cudaEventDestroy(p->ev[i]);
    gn_free(p);
}

extern "C" void gn_cu_prof_destroy(gn_backend *be) {
    prof_free(gn_cu(be)->prof);
    gn_cu(be)->prof = NULL;
}

extern "C" int gn_backend_cuda_profile(gn_backend *be, int on) {
    gn_cuda *c = gn_cu(be);
    if (c->capturing)
        return gn_errf(&be->err, GN_EINVAL, "%s: profile: not while capturing a CUDA graph", be->name);
    if (c->prof) gn_cu_prof_end(be);
    gn_cu_prof_destroy(be);
    if (!on) return 0;
    c->prof = (gn_cu_prof *)gn_calloc(1, sizeof *c->prof);
    if (!c->prof) return gn_errf(&be->err, GN_ENOMEM, "%s: profile: out of host memory", be->name);
    return 0;
}

extern "C" int gn_backend_cuda_profile_report(gn_backend *be, FILE *f, double per) {
    gn_cu_prof *p = gn_cu(be)->prof;
    if (!p) return gn_errf(&be->err, GN_EINVAL, "%s: profile_report: profiling is off", be->name);
    gn_cu_prof_end(be);
    if (per <= 0) per = 1;
    /* Largest first (a selection sort over at most kLabels entries). */
    int order[kLabels];
    double sum = 0;
    for (int i = 0; i < p->n_totals; i++) order[i] = i, sum += p->totals[i].ms;
    for (int i = 0; i < p->n_totals; i++)
        for (int j = i + 1; j < p->n_totals; j++)
            if (p->totals[order[j]].ms > p->totals[order[i]].ms) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    fprintf(f, "    %-48s %8s %10s %6s %9s\n", "op", "calls", "ms", "share", "us/call");
    for (int k = 0; k < p->n_totals; k++) {
        const total *t = &p->totals[order[k]];
        fprintf(f, "    %-48s %8.1f %10.3f %5.1f%% %9.2f\n", t->label, t->count / per, t->ms / per,
                sum > 0 ? 100.0 * t->ms / sum : 0.0, t->count ? 1e3 * t->ms / (double)t->count : 0.0);
    }
    fprintf(f, "    %-48s %8s %10.3f\n", "total", "", sum / per);
    if (p->dropped) fprintf(f, "    (%lld marks dropped)\n", p->dropped);
    return 0;
}
